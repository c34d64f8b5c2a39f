//! The emulators start and answer (the AWS backends' suites build on this).
#![cfg(feature = "aws")]

use saldo_persistence::{aws, emulators::Emulator};

#[tokio::test]
async fn kinesalite_and_dynamodb_local_answer() {
    let k = Emulator::kinesis();
    let d = Emulator::dynamodb();
    let kc = aws_sdk_kinesis::Client::new(
        &aws::sdk_config(&aws::AwsSettings::emulator(k.endpoint())).await,
    );
    kc.list_streams()
        .send()
        .await
        .expect("kinesalite answers ListStreams");
    let dc = aws_sdk_dynamodb::Client::new(
        &aws::sdk_config(&aws::AwsSettings::emulator(d.endpoint())).await,
    );
    dc.list_tables()
        .send()
        .await
        .expect("DynamoDB Local answers ListTables");
}
