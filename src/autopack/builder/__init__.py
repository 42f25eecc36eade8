"""The Builder role: its prompt, parsing its answer, the deliverables contract, the Auditor."""
