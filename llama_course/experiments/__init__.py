"""The measured runs behind the chapters' numbers and plots: one module per experiment, each with a command that
regenerates its shipped results file and a function that loads it."""
