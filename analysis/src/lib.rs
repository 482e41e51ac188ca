//! weir analysis
