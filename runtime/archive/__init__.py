"""Model archives in TorchServe's MAR format: reading them safely and writing them.

`reader.load_archive` turns a `.mar`, a `.tar.gz` or an unpacked folder into a model directory
and its manifest; `writer.write_archive` packs one the way `torch-model-archiver` 0.12 does;
`cli` is `marfleet archive`.
"""
