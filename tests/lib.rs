//! End-to-end tests of Rapport: each file beside this one starts the real server (all services or a
//! split deployment) on free ports and talks to it over gRPC and HTTP, on SQLite and the in-process
//! cache by default, on PostgreSQL and Redis when `RAPPORT_TEST_DATABASE_URL` and
//! `RAPPORT_TEST_REDIS_URL` are set (see `scripts/test.sh`).
