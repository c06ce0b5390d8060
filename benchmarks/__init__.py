"""The experiments around keras_bayes, kept out of the installed library.

Each module is a command (`python benchmarks/<name>.py --help`) and, for the
tests and tutorials, importable from the repository root
(`from benchmarks import cifar10`).
"""
