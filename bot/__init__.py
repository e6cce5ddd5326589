"""paperbot: a paper-trading daemon for LSTM strategies."""

__version__ = "0.1.0"
