//! Delta images (placeholder: being written).
