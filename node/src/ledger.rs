//! The order ledger: every confirmed order of a sale — id, sku, quantity, customer,
//! idempotency key, when it was reserved and confirmed, and the epoch whose primary sold
//! it — as JSON lines or CSV, ordered by id. The same rows online, from the durable state
//! a node serves (`GET /admin/v1/ledger`), and offline, from a data directory
//! (`stock-node wal ledger DIR`: the newest snapshot, then the log after it).
//!
//! Across a failover the ledger of the new primary is the sale's: it holds every record
//! the old primary acknowledged (replicated, or recovered from its volume before the
//! promotion) at the epochs that wrote them, each order once under its one id; a record
//! only a fenced primary had was never acknowledged and is not in it.

use std::io::{self, Write};

use flashsale_core::replication::{EpochStart, epoch_at};
use flashsale_core::{Order, OrderState, UnixMs};
use serde::Serialize;

/// One confirmed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// The order's id (the WAL sequence of its purchase).
    pub id: u64,
    pub sku: String,
    pub quantity: u32,
    pub customer: String,
    pub idempotency_key: String,
    /// When it was reserved (the primary's clock).
    pub created_at_ms: UnixMs,
    /// When it was confirmed; empty only for an order confirmed by a node older than
    /// the ledger, whose state did not keep the time.
    pub confirmed_at_ms: Option<UnixMs>,
    /// The epoch of the primary that sold it (its purchase record's).
    pub epoch: u64,
}

/// How the ledger is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl Format {
    /// From a `format` query value: `jsonl` (also `json`) or `csv`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "jsonl" | "json" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/jsonl",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The entry of `order` if it is confirmed; `epochs` and `last` are the log's epoch
/// history and last sequence.
pub fn entry(order: &Order, epochs: &[EpochStart], last: u64) -> Option<LedgerEntry> {
    (order.state == OrderState::Confirmed).then(|| LedgerEntry {
        id: order.id,
        sku: order.sku.clone(),
        quantity: order.quantity,
        customer: order.customer.clone(),
        idempotency_key: order.idempotency_key.clone(),
        created_at_ms: order.created_at_ms,
        confirmed_at_ms: order.confirmed_at_ms,
        // A confirmed order's purchase is in the log (or the snapshot that compacted it):
        // the history covers it.
        epoch: epoch_at(epochs, last, order.id).unwrap_or(0),
    })
}

/// Writes `entries` (in the order given) in `format`.
pub fn write(entries: &[LedgerEntry], format: Format, out: &mut impl Write) -> io::Result<()> {
    match format {
        Format::Jsonl => {
            for e in entries {
                serde_json::to_writer(&mut *out, e)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            if entries.is_empty() {
                w.write_record([
                    "id",
                    "sku",
                    "quantity",
                    "customer",
                    "idempotencyKey",
                    "createdAtMs",
                    "confirmedAtMs",
                    "epoch",
                ])
                .map_err(io::Error::other)?;
            }
            for e in entries {
                let cell = LedgerEntry {
                    customer: spreadsheet_text(&e.customer),
                    idempotency_key: spreadsheet_text(&e.idempotency_key),
                    ..e.clone()
                };
                w.serialize(cell).map_err(io::Error::other)?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// A client's string as a CSV cell a spreadsheet shows as text: one that starts like a
/// formula gets a leading `'`, as OWASP advises against CSV injection. A customer id is
/// whatever a buyer sent, and a ledger is opened by whoever settles the sale:
/// `=HYPERLINK(…)` there must not run. Like a formula: `=`, `+`, `-` or `@` (or their
/// full-width forms, which some spreadsheets fold into them) first, or after leading
/// white space (which some trim), or a control character first (a tab, a carriage
/// return). The JSON lines form keeps every string exact.
fn spreadsheet_text(s: &str) -> String {
    let formula = |c: char| matches!(c, '=' | '+' | '-' | '@' | '＝' | '＋' | '－' | '＠');
    let risky = s.starts_with(char::is_control) || s.trim_start().starts_with(formula);
    if risky {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// The ledger of a data directory, offline and read-only: the newest snapshot whose
/// checksum holds, then every record after it (a torn tail is not read).
pub fn from_dir(dir: &std::path::Path) -> anyhow::Result<Vec<LedgerEntry>> {
    use anyhow::Context;

    use crate::engine::snapshot;
    use crate::wal::{FsDir, ScanOptions, scan};

    let d = FsDir::existing(dir).with_context(|| format!("open {}", dir.display()))?;
    let mut skipped = Vec::new();
    let mut state = snapshot::load_newest(&d, &mut skipped)
        .with_context(|| format!("read the snapshots of {}", dir.display()))?
        .unwrap_or_default();
    for s in &skipped {
        tracing::warn!(snapshot = %s, "damaged snapshot skipped");
    }
    let mut apply_err = None;
    scan(
        &d,
        &ScanOptions {
            repair: false,
            tail_window_bytes: crate::engine::EngineOptions::default().tail_window_bytes(),
            from_seq: state.applied_seq + 1,
        },
        |rec| {
            let seq = rec.seq;
            if apply_err.is_none()
                && seq > state.applied_seq
                && let Err(e) = state.apply(&rec)
            {
                apply_err = Some(format!("record {seq}: {e:?}"));
            }
            Ok(())
        },
    )
    .with_context(|| format!("{} is damaged", dir.display()))?;
    if let Some(e) = apply_err {
        anyhow::bail!("{}: {e}", dir.display());
    }
    let mut entries: Vec<LedgerEntry> = state
        .orders
        .values()
        .filter_map(|o| entry(&state.api_order(o), &state.epochs, state.applied_seq))
        .collect();
    entries.sort_unstable_by_key(|e| e.id);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, state: OrderState, customer: &str) -> Order {
        Order {
            id,
            sku: "tee".into(),
            quantity: 2,
            customer: customer.into(),
            idempotency_key: format!("k{id}"),
            state,
            created_at_ms: 1_000 + id as i64,
            expires_at_ms: 9_000,
            confirmed_at_ms: (state == OrderState::Confirmed).then_some(2_000 + id as i64),
        }
    }

    #[test]
    fn only_confirmed_orders_with_the_epoch_that_sold_them() {
        let epochs = [
            EpochStart {
                epoch: 1,
                first_seq: 1,
            },
            EpochStart {
                epoch: 3,
                first_seq: 10,
            },
        ];
        let e = entry(&order(4, OrderState::Confirmed, "a"), &epochs, 12).unwrap();
        assert_eq!((e.epoch, e.confirmed_at_ms), (1, Some(2_004)));
        assert_eq!(
            entry(&order(11, OrderState::Confirmed, "a"), &epochs, 12)
                .unwrap()
                .epoch,
            3
        );
        for s in [
            OrderState::Reserved,
            OrderState::Cancelled,
            OrderState::Expired,
        ] {
            assert_eq!(entry(&order(5, s, "a"), &epochs, 12), None);
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_jsonl_is_one_object_a_line() {
        let epochs = [EpochStart {
            epoch: 1,
            first_seq: 1,
        }];
        let rows: Vec<LedgerEntry> = [
            order(1, OrderState::Confirmed, "plain"),
            order(2, OrderState::Confirmed, "a, \"quoted\" one"),
        ]
        .iter()
        .filter_map(|o| entry(o, &epochs, 2))
        .collect();
        let mut csv = Vec::new();
        write(&rows, Format::Csv, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(
            csv,
            "id,sku,quantity,customer,idempotencyKey,createdAtMs,confirmedAtMs,epoch\n\
             1,tee,2,plain,k1,1001,2001,1\n\
             2,tee,2,\"a, \"\"quoted\"\" one\",k2,1002,2002,1\n"
        );
        let mut empty = Vec::new();
        write(&[], Format::Csv, &mut empty).unwrap();
        assert!(String::from_utf8(empty).unwrap().starts_with("id,sku,"));
        let mut jsonl = Vec::new();
        write(&rows, Format::Jsonl, &mut jsonl).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["customer"], "a, \"quoted\" one");
        assert_eq!(lines[1]["confirmedAtMs"], 2002);
    }

    #[test]
    fn a_customer_that_looks_like_a_formula_is_text_in_csv_and_exact_in_jsonl() {
        let epochs = [EpochStart {
            epoch: 1,
            first_seq: 1,
        }];
        let evil = "=HYPERLINK(\"http://x\",\"pay\")";
        let rows: Vec<LedgerEntry> = [
            order(1, OrderState::Confirmed, evil),
            order(2, OrderState::Confirmed, "@SUM(1)"),
            order(3, OrderState::Confirmed, "a=b"),
            order(4, OrderState::Confirmed, " =1+1"),
            order(5, OrderState::Confirmed, "＝1+1"),
            order(6, OrderState::Confirmed, "\n=1"),
        ]
        .iter()
        .filter_map(|o| entry(o, &epochs, 6))
        .collect();
        let mut csv = Vec::new();
        write(&rows, Format::Csv, &mut csv).unwrap();
        let cells: Vec<Vec<String>> = csv::Reader::from_reader(&csv[..])
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        assert_eq!(cells[0][3], format!("'{evil}"));
        assert_eq!(cells[1][3], "'@SUM(1)");
        assert_eq!(
            cells[2][3], "a=b",
            "only a formula's first character counts"
        );
        assert_eq!(cells[3][3], "' =1+1");
        assert_eq!(cells[4][3], "'＝1+1");
        assert_eq!(cells[5][3], "'\n=1");
        let mut jsonl = Vec::new();
        write(&rows, Format::Jsonl, &mut jsonl).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(jsonl).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first["customer"], evil);
    }
}
