//! pcapng files for `vswitchctl capture` (written with the `pcap-file` crate): one Interface
//! Description Block per port (named after the port id, plus `underlay`), nanosecond timestamps
//! (`if_tsresol` = 9), each packet's verdict in its Enhanced Packet Block's `opt_comment`.
//! Blocks are flushed as they are written, so `-w -` streams into `tshark -r -`.
//! Also reads pcap and pcapng files (`trace --inject-pcap`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::Block;
use pcap_file::pcapng::{PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, PcapError};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("pcapng: {0}")]
    Pcap(#[from] PcapError),
    #[error("write capture: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a pcap or pcapng file")]
    NotPcap,
    #[error("link type {0:?} is not Ethernet; only Ethernet captures can be injected")]
    LinkType(DataLink),
}

/// Writes packets to a pcapng stream.
pub struct CaptureWriter<W: Write> {
    w: PcapNgWriter<W>,
    snaplen: u32,
    interfaces: HashMap<String, u32>,
}

impl<W: Write> CaptureWriter<W> {
    /// Starts a section; `interfaces` get their description blocks now (more are added when a
    /// packet names one not seen yet).
    pub fn new(out: W, snaplen: u32, interfaces: &[&str]) -> Result<Self, CaptureError> {
        let shb = SectionHeaderBlock {
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "vswitch {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..SectionHeaderBlock::default()
        };
        let mut c = CaptureWriter {
            w: PcapNgWriter::with_section_header(out, shb)?,
            snaplen,
            interfaces: HashMap::new(),
        };
        for i in interfaces {
            c.interface(i)?;
        }
        c.w.get_mut().flush()?;
        Ok(c)
    }

    fn interface(&mut self, name: &str) -> Result<u32, CaptureError> {
        if let Some(i) = self.interfaces.get(name) {
            return Ok(*i);
        }
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: self.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.w.write_pcapng_block(idb)?;
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        self.interfaces.insert(name.to_string(), id);
        Ok(id)
    }

    /// Writes one packet seen on `interface` (a port id or `underlay`) and flushes it.
    pub fn write(
        &mut self,
        interface: &str,
        time_ns: u64,
        data: &[u8],
        orig_len: u32,
        comment: &str,
    ) -> Result<(), CaptureError> {
        let interface_id = self.interface(interface)?;
        let data = &data[..data.len().min(self.snaplen as usize)];
        let epb = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(time_ns),
            original_len: orig_len.max(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Borrowed(comment))],
        };
        self.w.write_pcapng_block(epb)?;
        self.w.get_mut().flush()?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

/// The Ethernet frames of a pcap or pcapng file, in order.
pub fn read_frames(mut input: impl Read) -> Result<Vec<Vec<u8>>, CaptureError> {
    let mut all = Vec::new();
    input.read_to_end(&mut all)?;
    let magic = all.get(..4).ok_or(CaptureError::NotPcap)?;
    let mut out = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(&all[..])?;
        let mut links = Vec::new();
        while let Some(b) = r.next_block() {
            match b? {
                Block::InterfaceDescription(i) => links.push(i.linktype),
                Block::EnhancedPacket(p) => {
                    let link = links.get(p.interface_id as usize).copied();
                    if link != Some(DataLink::ETHERNET) {
                        return Err(CaptureError::LinkType(link.unwrap_or(DataLink::Unknown(0))));
                    }
                    out.push(p.data.into_owned());
                }
                Block::SimplePacket(p) => out.push(p.data.into_owned()),
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(&all[..]).map_err(|_| CaptureError::NotPcap)?;
        let link = r.header().datalink;
        if link != DataLink::ETHERNET {
            return Err(CaptureError::LinkType(link));
        }
        while let Some(p) = r.next_packet() {
            out.push(p?.data.into_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn frame(n: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend([
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, n,
        ]);
        f
    }

    fn sample() -> Vec<u8> {
        let mut c = CaptureWriter::new(Vec::new(), 30, &["pod-a"]).unwrap();
        let t = 1_700_000_000_123_456_789;
        c.write("pod-a", t, &frame(1), 34, "tx pod-b").unwrap();
        c.write("underlay", t + 1, &frame(2), 34, "drop spoofed_src_ip")
            .unwrap();
        c.write(
            "pod-a",
            t + 2,
            &frame(3),
            34,
            "encap vxlan to node-b 10.1.0.1 > 10.1.0.2 vni 100",
        )
        .unwrap();
        c.into_inner()
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let frames = read_frames(&sample()[..]).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], frame(2)[..30].to_vec(), "cut at snaplen");
        assert!(matches!(
            read_frames(&b"nope"[..]),
            Err(CaptureError::NotPcap)
        ));
        assert!(read_frames(&[0x0a, 0x0d, 0x0d, 0x0a, 1, 2][..]).is_err());
    }

    /// tshark (installed by tests/install-deps.sh) as the independent reader, from a file and
    /// from a pipe.
    #[test]
    fn tshark_reads_interfaces_timestamps_and_comments() {
        if Command::new("tshark").arg("--version").output().is_err() {
            eprintln!("tshark not installed (tests/install-deps.sh installs it): skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vswitch-pcapng-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcapng");
        std::fs::write(&path, sample()).unwrap();
        let fields = [
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.comment",
        ];
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(fields)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "pod-a|1700000000.123456789|34|30|tx pod-b",
                "underlay|1700000000.123456790|34|30|drop spoofed_src_ip",
                "pod-a|1700000000.123456791|34|30|encap vxlan to node-b 10.1.0.1 > 10.1.0.2 vni 100",
            ],
            "{text}"
        );
        let mut child = Command::new("tshark")
            .args(["-r", "-"])
            .args(fields)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
