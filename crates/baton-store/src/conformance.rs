//! The conformance suite: what every [`Store`](crate::Store) must do. Each test is an
//! async function taking a fresh store; [`store_conformance_tests!`] turns them into
//! `#[tokio::test]`s for one store.
