"""Python tools of tritoned-bert (run them as scripts: `python utils/<tool>.py --help`)."""
