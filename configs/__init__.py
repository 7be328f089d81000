"""The recipes: this folder installs as the package ``threedgen.configs`` with its YAML files as
package data, so that an installed threedgen loads them by name (``threedgen.config.recipes``)."""
