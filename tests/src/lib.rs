//! End-to-end and golden tests of journeyd live in `tests/`.
