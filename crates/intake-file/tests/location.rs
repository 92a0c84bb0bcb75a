//! Rejected input is located: the file and line (or the fragment and line) it came
//! from, and its raw bytes are the input as it was written (a CSV record, not the JSON
//! object it was turned into).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use intake_core::{
    Column, DataType, ErrorPolicy, Location, Pipeline, Reader, Rejected, Schema, Source, Table,
};
use intake_file::{FileFormat, FileSource, FragmentParser, FragmentSource};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("genus", DataType::String),
        Column::new("weight", DataType::Float).nullable(),
    ])
    .unwrap()
}

fn reader() -> Reader {
    Reader::json(schema())
        .error_policy(ErrorPolicy::SkipAndReport)
        .autocommit_duration(Duration::from_millis(10))
}

/// Reads `source` to its end; the table and every rejected message.
async fn read_all(source: impl Source) -> (Table, Vec<Rejected>) {
    let mut pipeline = Pipeline::new();
    let table = pipeline.read("cats", source, reader());
    let rejected = tokio::spawn(pipeline.rejected(64).collect::<Vec<_>>());
    pipeline.run().await.unwrap();
    (table, rejected.await.unwrap())
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Regression: a CSV record that failed the schema was reported as the JSON object it
/// had been turned into, with no file or line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_value_rejected_at_line_7_is_reported_with_its_path_line_and_csv_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.csv");
    let content = concat!(
        "key,genus,weight\n",    // 1
        "1,manul,4.5\n",         // 2
        "2,\"felis\n",           // 3: a record spanning lines 3 and 4
        "catus\",3.0\n",         // 4
        "\n",                    // 5
        "3,lynx,12.0\n",         // 6
        "4, \"leo\" ,heavy\r\n", // 7: `heavy` is not a float
        "5,too,many,fields\n",   // 8
        "x6,\"pu\n",             // 9: a bad key in a record spanning lines
        "ma\",1\n",              // 10
    );
    std::fs::write(&path, content).unwrap();

    let (table, rejected) = read_all(FileSource::csv(&path)).await;

    assert_eq!(table.len(), 3, "the valid neighbours are kept");
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let path = shown(&path);

    assert_eq!(rejected[0].location(), Some(&Location::file(path.as_str(), 7)));
    assert_eq!(
        rejected[0].raw().as_ref(),
        b"4, \"leo\" ,heavy",
        "the line as it is in the file, not a JSON object"
    );
    assert!(
        rejected[0]
            .reason()
            .to_string()
            .contains("field `weight` should be float"),
        "{}",
        rejected[0].reason()
    );
    assert!(
        rejected[0].to_string().contains(&format!("at {path}:7: ")),
        "{}",
        rejected[0]
    );

    // Bad input the source finds itself is located too.
    assert_eq!(rejected[1].location(), Some(&Location::file(path.as_str(), 8)));
    assert_eq!(rejected[1].raw().as_ref(), b"5,too,many,fields");

    // A record spanning lines: the line it starts on, and all of its text.
    assert_eq!(rejected[2].location(), Some(&Location::file(path.as_str(), 9)));
    assert_eq!(rejected[2].raw().as_ref(), b"x6,\"pu\nma\",1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_line_rejected_at_line_7_is_reported_with_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cats.jsonl");
    let mut content = String::new();
    for key in 1..=6 {
        content.push_str(&format!("{{\"key\": {key}, \"genus\": \"manul\"}}\n"));
    }
    content.push_str("{\"key\": 7, \"genus\": 42}\n");
    content.push_str("{\"key\": 8, \"genus\": \"lynx\"}\n");
    std::fs::write(&path, content).unwrap();

    let (table, rejected) = read_all(FileSource::json_lines(&path)).await;

    assert_eq!(table.len(), 7);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].location(),
        Some(&Location::file(shown(&path).as_str(), 7))
    );
    assert_eq!(rejected[0].raw().as_ref(), b"{\"key\": 7, \"genus\": 42}");
}

/// Regression: a rejected fragment line said neither which fragment nor which line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_rejection_names_the_fragment_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("2024")).unwrap();
    std::fs::write(
        dir.path().join("2024/cats.csv"),
        "key,genus,weight\n1,manul,\n2,felis,light\n3,lynx,\n",
    )
    .unwrap();
    let source = FragmentSource::directory(dir.path(), "**/*.csv", FragmentParser::Lines(FileFormat::Csv))
        .unwrap()
        .settle_time(Duration::ZERO);

    let (table, rejected) = read_all(source).await;

    assert_eq!(table.len(), 2);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].location(),
        Some(&Location::fragment("2024/cats.csv", Some(3)))
    );
    assert_eq!(rejected[0].raw().as_ref(), b"2,felis,light");
    assert_eq!(
        rejected[0].location().map(ToString::to_string).as_deref(),
        Some("fragment 2024/cats.csv line 3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_json_fragment_names_the_fragment_without_a_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cats.json"),
        r#"[{"key": 1, "genus": "manul"}, {"key": "two", "genus": "felis"}]"#,
    )
    .unwrap();
    let source = FragmentSource::directory(dir.path(), "*.json", FragmentParser::Json)
        .unwrap()
        .settle_time(Duration::ZERO);

    let (table, rejected) = read_all(source).await;

    assert_eq!(table.len(), 1);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].location(),
        Some(&Location::fragment("cats.json", None))
    );
}
