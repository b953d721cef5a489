"""A config file that reads a run's resolved config.json: `workdir_config.py:WORKDIR`.

`llmjax eval|generate|predict --workdir=W` load their config through it, so `--config.x=v`
flags override the saved config exactly as they override a config file for `train`.
"""

from etils import epath

from llmjax import configs


def get_config(workdir: str):
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise configs.ConfigError(f"{path} does not exist: --workdir must be a directory "
                                  "that `llmjax train` wrote")
    return configs.from_json(path.read_text())
