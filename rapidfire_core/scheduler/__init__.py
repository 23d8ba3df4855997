"""Chunking, the round loop, run turn-taking and progress display."""
