//! Importers from other MTAs' shaping configuration.
