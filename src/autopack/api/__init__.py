"""The HTTP control plane: an app factory (``app.create_app``), typed dependencies and one
router per resource. Importing the package imports no web framework."""
