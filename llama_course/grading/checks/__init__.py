"""The graded tests of each exercise: module `exNN_name` defines `EXERCISE` for `exercises/NN_name.ipynb`."""
