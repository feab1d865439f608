"""`python -m trainer`: see trainer/cli.py."""

from trainer import cli

if __name__ == "__main__":
  cli.run()
