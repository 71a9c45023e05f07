"""Generated documentation pages and the checks that keep README and docs/ honest."""
