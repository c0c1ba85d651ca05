"""What the tests share: writers of fixture data sets, weights and results folders, and committed fixtures."""
