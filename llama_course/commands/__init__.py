"""The `llama-course` subcommands: argument parsing and printing only; the work is in the package below."""
