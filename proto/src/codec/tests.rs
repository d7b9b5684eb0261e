use super::*;
use crate::frame::*;

/// `10`, `10%`; a share of a total rounds as asked.
#[test]
fn shares_parse_and_apply() {
    assert_eq!("10".parse::<Share>(), Ok(Share::Count(10)));
    assert_eq!(" 5% ".parse::<Share>(), Ok(Share::Percent(5)));
    for bad in ["", "x", "-1", "101%", "1.5%"] {
        assert!(bad.parse::<Share>().is_err(), "{bad}");
    }
    assert_eq!(Share::Percent(10).of(200, true), 20);
    assert_eq!(Share::Percent(10).of(15, true), 2);
    assert_eq!(Share::Percent(5).of(10, false), 0);
    assert_eq!(Share::Count(3).of(1, false), 3);
    assert_eq!(Share::Percent(5).to_string(), "5%");
}

/// One frame of every kind, every field set (the codec tests run over all of them).
fn every_frame() -> Vec<Frame> {
    let mut frames = handshake_and_worker_frames();
    frames.push(Frame::Request(a_full_request().into()));
    frames.extend(client_answer_frames());
    frames
}

/// A request with every field set, the fleet options too.
fn a_full_request() -> Request {
    Request {
        id: 7,
        service: "demo".into(),
        plugin: "command/command".into(),
        command: vec!["uptime".into()],
        args: vec![Arg {
            key: "k".into(),
            value: "v".into(),
        }],
        payload: b"payload\0bytes".to_vec(),
        timeout_ms: 10_000,
        wait: true,
        key: Some(IdemKey {
            source: [7; 16],
            seq: u64::MAX,
        }),
        fleet: Fleet {
            batch: Some(Share::Percent(10)),
            max_failures: Some(Share::Count(3)),
            quorum: 5,
            quorum_cancel: true,
            deadline_ms: 600_000,
            only: vec!["w1".into()],
        },
        tag: Some("nightly-1".into()),
        trigger: Some("/weatherstation/rpi/station1".into()),
    }
}

/// The handshake, and the frames between a worker and the broker.
fn handshake_and_worker_frames() -> Vec<Frame> {
    let dispatch = Dispatch {
        id: 1 << 40,
        service: "demo".into(),
        plugin: "echo".into(),
        command: vec![],
        args: vec![],
        payload: vec![1, 2, 3],
        timeout_ms: 5,
        key: None,
    };
    vec![
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Client,
            credential: Credential::Jwt {
                token: "jwt".into(),
            },
        }),
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Worker,
            credential: Credential::Worker {
                team: "t".into(),
                identity: "w1".into(),
                token: "tok".into(),
            },
        }),
        Frame::Welcome {
            session: 9,
            heartbeat_ms: 1000,
            nodes: vec![],
        },
        Frame::Refused {
            kind: ErrorKind::Forbidden,
            reason: "no".into(),
        },
        Frame::Heartbeat,
        Frame::Announce {
            services: vec!["a".into(), "b".into()],
        },
        Frame::Accepted { id: 3 },
        Frame::Output {
            id: 3,
            seq: 0,
            stream: Stream::Stderr,
            data: b"line".to_vec(),
        },
        Frame::Done {
            id: 3,
            exit_code: -1,
        },
        Frame::Failed {
            id: 3,
            kind: ErrorKind::PluginNotFound,
            message: "x".into(),
        },
        Frame::Events {
            id: 3,
            events: vec![
                Event::Accepted,
                Event::Output {
                    seq: 0,
                    stream: Stream::Stdout,
                    data: b"hi".to_vec(),
                },
                Event::Done { exit_code: 0 },
            ],
        },
        Frame::Dispatch(dispatch.into()),
        Frame::Cancel { id: 4 },
        Frame::Pause { id: 4 },
        Frame::Resume { id: 4 },
    ]
}

/// What the broker answers a client.
fn client_answer_frames() -> Vec<Frame> {
    vec![
        Frame::Routed {
            id: 7,
            algorithm: Algorithm::Mirror,
            n_workers: 5,
        },
        Frame::Queued {
            id: 7,
            n_workers: 2,
        },
        Frame::Reply {
            id: 7,
            worker: "w1".into(),
            event: Event::Accepted,
        },
        Frame::Reply {
            id: 7,
            worker: "w1".into(),
            event: Event::Output {
                seq: 1,
                stream: Stream::Stdout,
                data: vec![0xff; 3],
            },
        },
        Frame::Reply {
            id: 7,
            worker: "w1".into(),
            event: Event::Done { exit_code: 2 },
        },
        Frame::Reply {
            id: 7,
            worker: "w1".into(),
            event: Event::Failed {
                kind: ErrorKind::WorkerLost,
                message: "gone".into(),
            },
        },
        Frame::Replies {
            id: 7,
            worker: "w2".into(),
            events: vec![Event::Accepted, Event::Done { exit_code: 0 }],
        },
        Frame::Summary {
            id: 7,
            summary: Summary {
                workers: 5,
                ok: 4,
                failed: 1,
                timed_out: 0,
                lost: 0,
                replayed: true,
                ..Default::default()
            },
        },
        Frame::Error {
            id: None,
            kind: ErrorKind::Malformed,
            message: "bad".into(),
        },
        Frame::Error {
            id: Some(1),
            kind: ErrorKind::NoWorkersOnline,
            message: "none".into(),
        },
        Frame::Answer(Box::new(crate::Answer {
            id: 8,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
            worker: "w1".into(),
            events: vec![Event::Accepted, Event::Done { exit_code: 0 }],
            summary: Summary {
                workers: 1,
                ok: 1,
                ..Default::default()
            },
        })),
    ]
}

#[test]
fn round_trip_every_frame_kind() {
    let frames = every_frame();
    let mut buf = BytesMut::new();
    for f in &frames {
        encode(f, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    }
    for f in &frames {
        let got = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(&got, f);
    }
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Ok(None));
}

#[test]
fn truncated_input_is_incomplete_at_every_cut() {
    for f in every_frame() {
        let bytes = encode_to_vec(&f);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode(&mut buf, DEFAULT_MAX_FRAME),
                Ok(None),
                "{f:?} cut {cut}"
            );
        }
    }
}

#[test]
fn oversized_prefix_is_refused_before_the_body_arrives() {
    let mut buf = BytesMut::new();
    buf.put_u32_le(u32::MAX);
    assert_eq!(
        decode(&mut buf, DEFAULT_MAX_FRAME),
        Err(ProtoError::Oversized {
            len: u32::MAX as usize,
            max: DEFAULT_MAX_FRAME
        })
    );
    let big = Frame::Output {
        id: 1,
        seq: 0,
        stream: Stream::Stdout,
        data: vec![0; 2048],
    };
    let mut out = BytesMut::from(&b"kept"[..]);
    assert!(matches!(
        encode(&big, &mut out, 1024),
        Err(ProtoError::Oversized { .. })
    ));
    assert_eq!(
        &out[..],
        b"kept",
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn encoding_in_place_matches_a_standalone_archive() {
    // The body written after a prefix (and after earlier frames) is byte-for-byte what
    // rkyv produces on its own.
    for f in every_frame() {
        let mut out = BytesMut::from(&b"xyz"[..]);
        encode(&f, &mut out, DEFAULT_MAX_FRAME).unwrap();
        let alone = rkyv::to_bytes::<rkyv::rancor::Error>(&f).unwrap();
        assert_eq!(&out[3 + LEN_PREFIX..], &alone[..], "{f:?}");
    }
}

#[test]
fn empty_frame_is_an_error() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Err(ProtoError::Empty));
}

#[test]
fn corrupted_bodies_never_panic() {
    // Flip every byte of every frame in turn: each result is a frame or a typed error.
    for f in every_frame() {
        let bytes = encode_to_vec(&f);
        for i in LEN_PREFIX..bytes.len() {
            for flip in [0xffu8, 0x80, 0x01] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let mut buf = BytesMut::from(&b[..]);
                let _ = decode(&mut buf, DEFAULT_MAX_FRAME);
            }
        }
    }
}

#[test]
fn random_bytes_give_typed_errors() {
    // A fixed xorshift so the test is repeatable.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n_errors = 0;
    for round in 0..2000 {
        let len = 4 + (round % 200);
        let mut body = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push(x as u8);
        }
        let mut buf = BytesMut::new();
        buf.put_u32_le(len as u32);
        buf.put_slice(&body);
        if decode(&mut buf, DEFAULT_MAX_FRAME).is_err() {
            n_errors += 1;
        }
    }
    assert!(
        n_errors > 1900,
        "random bytes decoded as frames {} times",
        2000 - n_errors
    );
}

#[test]
fn wrong_version_and_wrong_first_frame_are_refused() {
    let hello = |v, role| {
        Frame::Hello(Hello {
            protocol_version: v,
            role,
            credential: Credential::Jwt { token: "t".into() },
        })
    };
    assert_eq!(
        check_hello(hello(99, Role::Client)),
        Err(ProtoError::UnsupportedVersion {
            got: 99,
            expected: PROTOCOL_VERSION
        })
    );
    assert!(matches!(
        check_hello(hello(PROTOCOL_VERSION, Role::Worker)),
        Err(ProtoError::BadHandshake { .. })
    ));
    assert!(matches!(
        check_hello(Frame::Heartbeat),
        Err(ProtoError::BadHandshake { .. })
    ));
    assert!(check_hello(hello(PROTOCOL_VERSION, Role::Client)).is_ok());
}

/// A broker still takes the oldest version it serves (a client of 7 gets no `Answer`
/// frames), and nothing older.
#[test]
fn the_previous_version_is_taken_and_older_ones_refused() {
    let hello = |v| {
        Frame::Hello(Hello {
            protocol_version: v,
            role: Role::Client,
            credential: Credential::Jwt { token: "t".into() },
        })
    };
    assert_eq!(crate::MIN_PROTOCOL_VERSION, PROTOCOL_VERSION - 1);
    let taken = check_hello(hello(crate::MIN_PROTOCOL_VERSION)).map(|h| h.protocol_version);
    assert_eq!(taken, Ok(crate::MIN_PROTOCOL_VERSION));
    assert!(matches!(
        check_hello(hello(crate::MIN_PROTOCOL_VERSION - 1)),
        Err(ProtoError::UnsupportedVersion { .. })
    ));
}

#[test]
fn a_scoped_key_depends_on_team_identity_and_source() {
    let key = IdemKey {
        source: [1; 16],
        seq: 9,
    };
    let scoped = key.scoped("t", "alice");
    assert_eq!(scoped.seq, 9);
    assert_eq!(scoped, key.scoped("t", "alice"));
    assert_ne!(scoped, key.scoped("t", "bob"));
    assert_ne!(scoped, key.scoped("u", "alice"));
    // Length-prefixed: moving a character from the team to the identity changes it.
    assert_ne!(key.scoped("ta", "b"), key.scoped("t", "ab"));
    let other = IdemKey {
        source: [2; 16],
        seq: 9,
    };
    assert_ne!(scoped, other.scoped("t", "alice"));
}

/// A worker's frames go out with each run of frames about one dispatch as one `Events`
/// (a run of one as it was), in the order they were queued.
#[test]
fn worker_frames_about_one_dispatch_merge_in_order() {
    let out = |id, seq: u64| Frame::Output {
        id,
        seq,
        stream: Stream::Stdout,
        data: vec![b'a' + seq as u8],
    };
    let frames = vec![
        Frame::Accepted { id: 1 },
        out(1, 0),
        Frame::Done {
            id: 1,
            exit_code: 0,
        },
        Frame::Accepted { id: 2 },
        Frame::Heartbeat,
        out(2, 0),
        out(3, 0),
        Frame::Failed {
            id: 3,
            kind: ErrorKind::Timeout,
            message: "late".into(),
        },
    ];
    let merged = Frame::merge_worker_events(frames.clone());
    let event = |frame: Frame| frame.into_worker_event().unwrap().1;
    assert_eq!(
        merged,
        vec![
            Frame::Events {
                id: 1,
                events: frames[..3].iter().cloned().map(event).collect(),
            },
            Frame::Accepted { id: 2 },
            Frame::Heartbeat,
            out(2, 0),
            Frame::Events {
                id: 3,
                events: frames[6..].iter().cloned().map(event).collect(),
            },
        ]
    );
    // Expanded again, they are the frames queued.
    let expanded: Vec<Frame> = merged
        .into_iter()
        .flat_map(|f| match f {
            Frame::Events { id, events } => events
                .into_iter()
                .map(|e| Frame::from_worker_event(id, e))
                .collect(),
            other => vec![other],
        })
        .collect();
    assert_eq!(expanded, frames);
    assert!(Frame::merge_worker_events(Vec::new()).is_empty());
    // A frame after a run's end is not merged into it.
    let stray = vec![
        Frame::Done {
            id: 4,
            exit_code: 0,
        },
        Frame::Failed {
            id: 4,
            kind: ErrorKind::Cancelled,
            message: "late".into(),
        },
    ];
    assert_eq!(Frame::merge_worker_events(stray.clone()), stray);
}

/// A run of small events merges; past `MERGE_BYTES` of payload the next event starts a new
/// frame, an event larger than that stays alone, and events without payload always join.
#[test]
fn merged_events_stay_within_their_byte_bound() {
    let line = |seq: u64, len: usize| Frame::Output {
        id: 9,
        seq,
        stream: Stream::Stdout,
        data: vec![b'x'; len],
    };
    let quarter = MERGE_BYTES / 4;
    let mut frames = vec![Frame::Accepted { id: 9 }];
    frames.extend((0..10).map(|seq| line(seq, quarter)));
    frames.push(line(10, MERGE_BYTES + 1));
    frames.push(Frame::Done {
        id: 9,
        exit_code: 0,
    });
    let merged = Frame::merge_worker_events(frames.clone());
    let sizes: Vec<(usize, usize)> = merged
        .iter()
        .map(|f| match f {
            Frame::Events { events, .. } => (
                events.len(),
                events.iter().map(Event::payload_len).sum::<usize>(),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sizes,
        [
            (5, MERGE_BYTES),
            (4, MERGE_BYTES),
            (2, 2 * quarter),
            (2, MERGE_BYTES + 1)
        ]
    );
    let n_events: usize = sizes.iter().map(|(n, _)| n).sum();
    assert_eq!(n_events, frames.len());
}

/// A `Frame` stays small: every frame is moved several times between the decoder and where
/// it is handled, so its largest variants (`Request`, `Dispatch`) are boxed.
#[test]
fn a_frame_is_small() {
    let size = std::mem::size_of::<Frame>();
    assert!(size <= 96, "a Frame is {size} bytes");
}
