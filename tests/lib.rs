//! End-to-end tests live in `http/`; fixtures in `fixtures/`. This library is empty.
