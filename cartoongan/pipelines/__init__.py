"""What a user runs: sample, project, toonify, swap, the demo."""
