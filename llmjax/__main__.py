from llmjax.cli import run

run()
