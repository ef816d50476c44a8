"""`python -m encoder.bench`: what the encoder and the whole pipeline cost, next to the peers.

speech.py builds the input (our synthesised sentences, reordered and joined); jobs.py holds
every measurement, each run in a child process so its peak resident memory is its own;
suite.py runs them in order into one result; report.py reads the result (ratios, goals, the
text report); chart.py draws it.
"""
