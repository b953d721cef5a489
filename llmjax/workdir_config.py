"""A config file that reads a run's resolved config.json: `workdir_config.py:WORKDIR`.

`llmjax eval|generate|predict --workdir=W` load their config through it, so `--config.x=v`
flags override the saved config exactly as they override a config file for `train`. W may also
be a Hugging Face model folder, whose config.json is converted.
"""

from etils import epath

from llmjax import configs


def get_config(workdir: str):
    from llmjax.convert import hf

    if hf.is_hf_folder(workdir):  # a Hugging Face model folder: its config, converted
        return hf.import_config(workdir)
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise configs.ConfigError(f"{path} does not exist: --workdir must be a directory "
                                  "that `llmjax train` wrote")
    return configs.from_json(path.read_text())
