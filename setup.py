"""Maps the top-level folders operator/ and runtime/ onto the import packages
marfleet.operator and marfleet.runtime (the layout docs/architecture.md describes)."""

from setuptools import find_namespace_packages, setup

ROOTS = {"operator": "marfleet.operator", "runtime": "marfleet.runtime"}
DATA = ["*.j2", "*.yaml", "*.json", "templates/*", "static/*"]

packages: list[str] = []
for folder, name in ROOTS.items():
    packages.append(name)
    # every folder, also those holding only data (operator/templates): setuptools wants each
    # importable folder listed
    subs = find_namespace_packages(folder, exclude=["*__pycache__*"])
    packages += [f"{name}.{sub}" for sub in subs]

setup(
    packages=packages,
    package_dir=dict(zip(ROOTS.values(), ROOTS.keys(), strict=True)),
    package_data={name: DATA for name in packages},
)
