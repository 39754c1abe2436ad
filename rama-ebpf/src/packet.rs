//! Header layouts and bounds-checked access. All header access goes through `ptr_at`,
//! which proves to the verifier that the whole header lies inside the packet.
use aya_ebpf::programs::{TcContext, XdpContext};
use rama_common::counters::Reason;

pub const ETH_LEN: usize = 14;
pub const IPV6_LEN: usize = 40;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len_be: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// ARP for Ethernet/IPv4 (RFC 826).
#[repr(C)]
pub struct ArpHdr {
    pub htype_be: [u8; 2],
    pub ptype_be: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op_be: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

#[repr(C)]
pub struct UdpHdr {
    pub src_port_be: [u8; 2],
    pub dst_port_be: [u8; 2],
    pub len_be: [u8; 2],
    pub check: [u8; 2],
}

/// A neighbour solicitation or advertisement with one link-layer address option
/// (RFC 4861 §4.3, §4.4, §4.6.1): the shape Linux and routers send on a LAN.
#[repr(C)]
pub struct NdMsg {
    pub icmp_type: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub flags: [u8; 4],
    pub target: [u8; 16],
    pub opt_type: u8,
    pub opt_len: u8,
    pub opt_mac: [u8; 6],
}

pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_OPT_SOURCE_LLADDR: u8 = 1;
pub const ND_OPT_TARGET_LLADDR: u8 = 2;

/// Both program contexts that give direct packet access.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset`, or `DropMalformed` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T, C: Packet>(ctx: &C, offset: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Reason::DropMalformed);
    }
    Ok((start + offset) as *mut T)
}

/// RFC 1624 incremental checksum update for one 16-bit word, in the byte order the
/// words have in the packet (the one's-complement sum is byte-order independent).
#[inline(always)]
pub fn csum_replace2(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let check = u16::from_ne_bytes(check);
    let old = u16::from_ne_bytes(old);
    let new = u16::from_ne_bytes(new);
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_ne_bytes()
}

#[inline(always)]
pub fn is_v6_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && (addr[1] & 0xc0) == 0x80
}

#[inline(always)]
pub fn is_v6_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

#[inline(always)]
pub fn is_v6_unspecified(addr: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*addr) == 0
}
