//! DynamoDB snapshot store (being written).
