//! Readings → request bodies, appended to a reusable `Vec<u8>`.
//!
//! Values are fixed-point integers in the plug's resolution, so they are printed as
//! integers with a decimal point put in, never through float formatting: the decimal
//! written is the reading's exact value, and parsing it back gives exactly
//! [`Reading::voltage`] and friends. The per-plug head of each line (measurement and
//! tags, or the JSON keys up to `ts`) is built once per plug.

use crate::simulator::Reading;

/// Appends `r` as one InfluxDB line-protocol line with a nanosecond timestamp, ending
/// in `\n`:
///
/// ```text
/// power_metrics,device_id=plug-000001,location=kitchen,device_type=fridge voltage=231.4,current=0.512,power=98.7,energy=123456.78,relay_state=true 1700000000123000000
/// ```
pub fn encode_lp(r: &Reading<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(r.plug.lp_prefix());
    push_fixed(out, u64::from(r.voltage_dv), Decimals::One);
    out.extend_from_slice(b",current=");
    push_fixed(out, u64::from(r.current_ma), Decimals::Three);
    out.extend_from_slice(b",power=");
    push_fixed(out, u64::from(r.power_dw), Decimals::One);
    out.extend_from_slice(b",energy=");
    push_fixed(out, r.energy_cwh, Decimals::Two);
    out.extend_from_slice(if r.relay_on {
        b",relay_state=true "
    } else {
        b",relay_state=false "
    });
    push_i64(out, r.ts);
    out.push(b'\n');
}

/// Appends `r` as one JSON object (no separator), `ts` as integer nanoseconds:
///
/// ```text
/// {"device_id":"plug-000001","location":"kitchen","device_type":"fridge","ts":1700000000123000000,"voltage":231.4,"current":0.512,"power":98.7,"energy":123456.78,"relay_state":true}
/// ```
pub fn encode_json(r: &Reading<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(r.plug.json_prefix());
    push_i64(out, r.ts);
    out.extend_from_slice(b",\"voltage\":");
    push_fixed(out, u64::from(r.voltage_dv), Decimals::One);
    out.extend_from_slice(b",\"current\":");
    push_fixed(out, u64::from(r.current_ma), Decimals::Three);
    out.extend_from_slice(b",\"power\":");
    push_fixed(out, u64::from(r.power_dw), Decimals::One);
    out.extend_from_slice(b",\"energy\":");
    push_fixed(out, r.energy_cwh, Decimals::Two);
    out.extend_from_slice(if r.relay_on {
        b",\"relay_state\":true}"
    } else {
        b",\"relay_state\":false}"
    });
}

#[derive(Debug, Clone, Copy)]
enum Decimals {
    One,
    Two,
    Three,
}

/// Appends `v / 10^d` with exactly `d` decimals.
#[inline]
fn push_fixed(out: &mut Vec<u8>, v: u64, d: Decimals) {
    let (scale, digits) = match d {
        Decimals::One => (10, 1),
        Decimals::Two => (100, 2),
        Decimals::Three => (1000, 3),
    };
    push_u64(out, v / scale);
    let mut frac = v % scale;
    let mut buf = [b'.', b'0', b'0', b'0'];
    for i in (1..=digits).rev() {
        buf[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out.extend_from_slice(&buf[..=digits]);
}

const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `v` in decimal, two digits at a time.
#[inline]
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

#[inline]
fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(v: u64, d: Decimals) -> String {
        let mut out = Vec::new();
        push_fixed(&mut out, v, d);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn integers() {
        for v in [0, 1, 9, 10, 99, 100, 101, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        let mut out = Vec::new();
        push_i64(&mut out, -42);
        assert_eq!(out, b"-42");
    }

    #[test]
    fn fixed_point() {
        assert_eq!(fixed(2301, Decimals::One), "230.1");
        assert_eq!(fixed(0, Decimals::One), "0.0");
        assert_eq!(fixed(5, Decimals::Two), "0.05");
        assert_eq!(fixed(12_345_678, Decimals::Two), "123456.78");
        assert_eq!(fixed(7, Decimals::Three), "0.007");
        assert_eq!(fixed(10_250, Decimals::Three), "10.250");
    }
}
