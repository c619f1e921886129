"""The test suite as a package, so that tests can share helpers (tests.synthetic, tests.conftest)."""
