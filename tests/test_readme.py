"""README's config reference names every config key (a row may group siblings as
`generate.top_k`, `.top_p`), and documents every CLI flag."""

import pathlib

from llmjax import cli, configs

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
ROWS = [line for line in README.splitlines() if line.startswith("|")]


def documented(key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    return any(f"`{key}`" in row or (parent and f"`{parent}." in row and f"`.{leaf}`" in row)
               for row in ROWS)


def test_every_config_key_is_in_the_config_reference():
    missing = [k for k, _ in configs.flatten(configs.base_config()) if not documented(k)]
    assert not missing, f"add these keys to README's config reference: {missing}"


def test_every_cli_flag_is_in_the_readme():
    ours = {f.name for f in cli.FLAGS.get_key_flags_for_module(cli.__name__)}
    missing = sorted(name for name in ours if f"--{name}" not in README)
    assert ours and not missing, f"document these flags in README: {missing}"
