"""``python -m tests.make_fixtures``: (re)write the committed fixture bundles (tests/fixtures/NAME) that the
runtime tests use where TensorFlow is absent. Each is converted and verified by the real converter
(tests/conftest.py ``build_fixture``); tests/test_fixtures.py checks, with TensorFlow, that they still
compute what the converter makes now."""

from __future__ import annotations

import shutil
import sys

from .conftest import COMMITTED, FIXTURES, build_fixture


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or [n for n, p in COMMITTED.items() if p.parent == FIXTURES]
    for name in names:
        path = FIXTURES / name
        if path.exists():
            shutil.rmtree(path)
        build_fixture(name, path)
        size = sum(p.stat().st_size for p in path.iterdir())
        print(f"{path}: {size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
