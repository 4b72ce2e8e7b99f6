//! Default Runtimes and Dockerfile rendering (being written).
