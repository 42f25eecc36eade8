import io
import json
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from examples.telemetry_utils.cli import main


class CliTest(unittest.TestCase):
    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_slugify_command(self) -> None:
        code, out, _ = self.run_main("slugify", "Hello World", "--separator", "_")
        self.assertEqual((code, out.strip()), (0, "hello_world"))

    def test_stats_command(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            sample = Path(directory) / "sample.txt"
            sample.write_text("one two two\n")
            code, out, _ = self.run_main("stats", str(sample), "--top", "1")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["top_words"], [["two", 2]])

    def test_missing_file_is_an_error(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            code, _, err = self.run_main("stats", str(Path(directory) / "missing.txt"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)


if __name__ == "__main__":
    unittest.main()
