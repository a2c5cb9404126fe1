//! Placeholder: filled by its issue.
#![warn(missing_docs)]
