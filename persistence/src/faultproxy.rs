//! Fault-injecting HTTP proxy for the AWS backends' tests (being written).
