//! Kinesis write-ahead stream (being written).
