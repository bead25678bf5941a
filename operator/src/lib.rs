//! The flashsale operator (placeholder until the operator lands).
