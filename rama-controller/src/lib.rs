//! Rama's cluster-wide controller. What exists so far: turning a pod (and its
//! namespace) into an allocation request, the part every allocation starts from.
pub mod request;
