"""The test tiers (issue 19): `make test-fast` runs unit and server; `make test` adds notebook and browser."""

from conftest import BROWSER_MODULES, LONG_MODULES, PROJECT_ROOT, SERVER_MODULES, STARTS_A_SERVER, module_tier

TESTS_DIR = PROJECT_ROOT / "tests"


def test_every_tiered_module_exists():
    modules = {path.stem for path in TESTS_DIR.glob("test_*.py")}
    assert (SERVER_MODULES | BROWSER_MODULES) - modules == set()
    assert set(LONG_MODULES) - modules == set(), "a long module scheduled first no longer exists"


def test_every_module_that_starts_a_model_server_is_in_the_server_tier():
    """`-m unit` never starts a model server: a module that does is tiered server, listed or not."""
    starts = [path for path in sorted(TESTS_DIR.glob("test_*.py")) if STARTS_A_SERVER.search(path.read_text())]
    assert starts, "the pattern finds the harness's calls"
    assert {path.name: module_tier(path) for path in starts} == {path.name: "server" for path in starts}
