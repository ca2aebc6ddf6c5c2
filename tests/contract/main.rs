//! The `Store` contract, called directly from Rust in this process: every
//! store (a local directory, a SQLite file, S3 on moto with and without
//! `If-Match`, OSS on the OSS test server, and with the `db` feature the db
//! store on PostgreSQL and MariaDB) must keep the promises
//! `stategate::stores` documents, because locking, the write rules and
//! history are written once on top of them. `contract_suite!(name, kind)`
//! instantiates every test for one store as `contract_<store>::<test>`, so
//! `cargo test --test contract contract_s3::` runs one store and
//! `cargo test --test contract listing_` one promise on every store.
//!
//! Guarantees a store may lack are gated on [`Store::capabilities`], and the
//! capabilities themselves are checked against what each store documents,
//! so a gate can never quietly skip a test. Each test gets a fresh store (a
//! new directory, database or bucket) on the moto and OSS servers this test
//! binary shares.
//!
//! `fixture` opens the stores; `suite` holds the promises, one async
//! function each.
//!
//! [`Store::capabilities`]: stategate::stores::Store::capabilities

// The suite opens every store, so it needs the S3 and OSS clients.
#![cfg(all(feature = "s3", feature = "oss"))]

#[path = "../helpers/mod.rs"]
mod support;

mod fixture;
mod suite;
mod write_then;

/// Generates one `#[test]` per contract function for a store.
macro_rules! contract_suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            contract_suite!(@tests $kind;
                capabilities_are_as_documented, get_put_stat_round_trip,
                reads_follow_every_new_version, change_all_stops_at_the_first_failure,
                a_write_the_same_as_another_holds_its_own_bytes,
                if_absent_refuses_an_existing_key, if_match_is_compare_and_swap,
                recreated_object_never_matches_its_old_version, delete_honours_its_condition,
                concurrent_creates_have_one_winner, concurrent_swaps_have_one_winner,
                read_modify_write_loses_no_update, listing_is_a_sorted_string_prefix,
                listing_outside_internal_leaves_out_exactly_the_internal_area,
                listing_shows_no_other_store, snapshot_copies_once_from_the_version_given,
                large_body_round_trips, spooled_bodies_stream_in_and_out,
                empty_body_round_trips, long_keys_round_trip,
                a_key_and_the_keys_below_it_are_all_stored, missing_backend_is_unavailable,
                write_then_change_makes_the_write_then_its_changes,
                writes_with_changes_at_once_keep_every_object_apart
            );
        }
    };
    (@tests $kind:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                crate::fixture::run($kind, crate::suite::$test);
            }
        )*
    };
}

contract_suite!(contract_local, crate::fixture::Kind::Local);
contract_suite!(
    contract_local_named_temporaries,
    crate::fixture::Kind::LocalNamedTemporaries
);
contract_suite!(contract_sqlite, crate::fixture::Kind::Sqlite);
contract_suite!(contract_s3, crate::fixture::Kind::S3);
contract_suite!(
    contract_s3_without_if_match,
    crate::fixture::Kind::S3WithoutIfMatch
);
contract_suite!(contract_oss, crate::fixture::Kind::Oss);
#[cfg(feature = "db")]
contract_suite!(contract_postgres, crate::fixture::Kind::Postgres);
#[cfg(feature = "db")]
contract_suite!(contract_mariadb, crate::fixture::Kind::Mariadb);
