"""The one compiled part: the fold of item-pairs messages (models/_cooccurrence.c).

Optional: without a C compiler the install still succeeds and the worker folds with the Python
reference (models.candidates.cooccurrence.fold_pairs_python), which gives the same records, slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("models._cooccurrence", ["models/_cooccurrence.c"], optional=True,
                             extra_compile_args=["-O2"])])
