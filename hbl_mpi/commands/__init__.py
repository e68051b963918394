"""One module per ``python -m hbl_mpi`` subcommand (``configure`` + ``run``)."""
