//! Kubernetes `$(VAR)` expansion for env values, command and args (the rules of
//! `k8s.io/kubernetes/third_party/forked/golang/expansion`).

/// `$(NAME)` becomes the value `lookup` gives, or stays as written when unknown;
/// `$$` is an escaped `$`; any other `$` is literal.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push_str(&input[literal_start..i]);
                    out.push('$');
                    i += 2;
                    literal_start = i;
                    continue;
                }
                b'(' => {
                    if let Some(close) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + close];
                        out.push_str(&input[literal_start..i]);
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 2 + close + 1]),
                        }
                        i += 2 + close + 1;
                        literal_start = i;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push_str(&input[literal_start..]);
    out
}

/// An ordered environment: later definitions replace earlier ones but keep the
/// first position, as the kubelet does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.vars.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// Sets `name` only when nothing set it before (image-like defaults such as PATH).
    pub fn set_default(&mut self, name: &str, value: impl Into<String>) {
        if self.get(name).is_none() {
            self.set(name, value);
        }
    }

    /// Expands `$(VAR)` against what is defined so far.
    pub fn expand(&self, s: &str) -> String {
        expand(s, |n| self.get(n).map(str::to_string))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut e = Env::default();
        for (k, v) in pairs {
            e.set(*k, *v);
        }
        e
    }

    #[test]
    fn expands_known_and_keeps_unknown() {
        let e = env(&[("POD", "web-0"), ("NS", "shop")]);
        assert_eq!(e.expand("$(POD).$(NS).svc"), "web-0.shop.svc");
        assert_eq!(e.expand("$(MISSING)-x"), "$(MISSING)-x");
    }

    #[test]
    fn escapes_and_lone_dollars() {
        let e = env(&[("A", "1")]);
        assert_eq!(e.expand("$$(A)"), "$(A)");
        assert_eq!(e.expand("$$$(A)"), "$1");
        assert_eq!(e.expand("cost $5 $"), "cost $5 $");
        assert_eq!(e.expand("$(A"), "$(A");
        assert_eq!(e.expand("é$(A)ü"), "é1ü");
    }

    #[test]
    fn later_definitions_override_in_place() {
        let mut e = env(&[("A", "1"), ("B", "2")]);
        e.set("A", "3");
        e.set_default("B", "9");
        assert_eq!(e.iter().collect::<Vec<_>>(), vec![("A", "3"), ("B", "2")]);
    }
}
