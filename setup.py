"""Only what pyproject.toml cannot say: the package list, derived rather than kept by hand.

The repository root *is* the ``fedmq`` package, so setuptools' own discovery would name the
subpackages ``aggregator``, ``schemas``... instead of ``fedmq.aggregator``: prefix them here. Every
folder with an ``__init__.py`` ships; tests/test_packaging.py builds the wheel and checks it.
"""

from setuptools import find_packages, setup

NOT_SHIPPED = ["tests", "tests.*", "benchmarks", "benchmarks.*", "examples", "examples.*", "deploy", "deploy.*"]

setup(packages=["fedmq", *(f"fedmq.{name}" for name in find_packages(".", exclude=NOT_SHIPPED))])
