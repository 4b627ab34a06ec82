//! End-to-end tests: the real server on 127.0.0.1:0 with the tiny fixture model,
//! spoken to over real HTTP. One test binary for all of them, to save link time.

mod common;

mod batching;
mod edits;
mod errors;
mod families;
mod generate;
mod jobs;
mod lifecycle;
mod load;
mod openai;
mod served_document;
mod stream_metrics;
mod surprises;
