//! Prints the FlashSale CRD YAML, or with `--reference` the README's field reference:
//!   cargo run -p flashsale-operator --bin crdgen > crds/flashsale.dev_flashsales.yaml
//!   cargo run -p flashsale-operator --bin crdgen -- --reference

fn main() {
    if std::env::args().any(|a| a == "--reference") {
        print!("{}", flashsale_operator::crd::reference_markdown());
    } else {
        print!("{}", flashsale_operator::crd::crd_yaml());
    }
}
