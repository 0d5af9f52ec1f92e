//! The PC/AT keyboard controller (Intel 8042 running IBM's firmware) with a
//! PS/2 keyboard and a minimal PS/2 mouse attached.
//!
//! References: IBM PC/AT Technical Reference ("Keyboard Controller"), and
//! the IBM PS/2 Hardware Interface Technical Reference ("Keyboard and
//! Auxiliary Device Controller", "Keyboard", "Pointing Device").
//!
//! The controller's data port is 0x60 and its status/command port 0x64. As a
//! [`BusDevice`] the controller answers at offset 0 (data) and 4
//! (status/command) of base 0x60; since port 0x61 belongs to port B, a
//! machine may instead register two [`I8042Port`] windows of one port each.
//!
//! Host keystrokes enter with [`I8042::push_scancodes`] as the bytes the
//! guest should read: no set 2 → set 1 translation is performed, so the
//! host picks the set given by [`I8042::expected_scancode_set`].

use crate::{log_odd_access, BusDevice, IrqLine, Snapshot, SystemControl};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// The data port (offset 0 of the device).
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status (read) / command (write) port (offset 4 of the device).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The ISA interrupt line of the keyboard.
pub const KEYBOARD_IRQ: u8 = 1;
/// The ISA interrupt line of the auxiliary (mouse) device.
pub const AUX_IRQ: u8 = 12;
/// Bytes of host input each device buffers before refusing more.
pub const INPUT_BUFFER_CAPACITY: usize = 256;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits (PS/2 Technical Reference, "Status Register").
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_NOT_INHIBITED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

// Command byte bits (controller RAM byte 0, "Controller Command Byte").
const CMD_KEYBOARD_IRQ: u8 = 0x01;
const CMD_AUX_IRQ: u8 = 0x02;
const CMD_SYSTEM_FLAG: u8 = 0x04;
const CMD_KEYBOARD_DISABLED: u8 = 0x10;
const CMD_AUX_DISABLED: u8 = 0x20;
const CMD_TRANSLATE: u8 = 0x40;
/// Command byte after the BIOS's POST: translation, system flag, both
/// interrupts enabled, both interfaces enabled.
const POST_COMMAND_BYTE: u8 = CMD_TRANSLATE | CMD_SYSTEM_FLAG | CMD_AUX_IRQ | CMD_KEYBOARD_IRQ;

// Output port bits ("Output Port").
const OUTPORT_RESET_DEASSERTED: u8 = 0x01;
const OUTPORT_A20: u8 = 0x02;
const OUTPORT_KEYBOARD_FULL: u8 = 0x10;
const OUTPORT_AUX_FULL: u8 = 0x20;

// Device replies ("Keyboard Outputs", "Pointing Device Outputs").
const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0xaa;
const ECHO: u8 = 0xee;
const KEYBOARD_ID: [u8; 2] = [0xab, 0x83];
const MOUSE_ID: u8 = 0x00;

/// A byte in the controller's output buffer and which device it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct OutputByte {
    value: u8,
    from_aux: bool,
}

/// The PS/2 keyboard's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Keyboard {
    /// Replies to commands; they go out before queued keystrokes.
    replies: VecDeque<u8>,
    scancodes: VecDeque<u8>,
    scanning: bool,
    leds: u8,
    typematic: u8,
    scancode_set: u8,
    /// A command waiting for its argument byte (0xed, 0xf0, 0xf3).
    awaiting_argument: Option<u8>,
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            scancodes: VecDeque::new(),
            scanning: true,
            leds: 0,
            typematic: 0x2b,
            scancode_set: 2,
            awaiting_argument: None,
            last_sent: 0,
        }
    }

    /// "Set Default" (0xf6): typematic rate and scancode set to defaults.
    fn set_defaults(&mut self) {
        self.typematic = 0x2b;
        self.scancode_set = 2;
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.replies.extend(bytes);
    }

    fn pop(&mut self) -> Option<u8> {
        let byte = self.replies.pop_front().or_else(|| {
            if self.scanning {
                self.scancodes.pop_front()
            } else {
                None
            }
        })?;
        self.last_sent = byte;
        Some(byte)
    }

    /// A byte from the host (PS/2 Technical Reference, "Commands from the
    /// System").
    fn write(&mut self, value: u8) {
        // An argument byte; a byte with bit 7 set is a new command instead.
        if let Some(command) = self.awaiting_argument.take() {
            if value & 0x80 == 0 {
                match command {
                    0xed => {
                        self.leds = value & 7;
                        self.reply(&[ACK]);
                    }
                    0xf3 => {
                        self.typematic = value & 0x7f;
                        self.reply(&[ACK]);
                    }
                    _ => match value {
                        0 => self.reply(&[ACK, self.scancode_set]),
                        1..=3 => {
                            self.scancode_set = value;
                            self.reply(&[ACK]);
                        }
                        _ => self.reply(&[RESEND]),
                    },
                }
                return;
            }
        }
        match value {
            0xed | 0xf0 | 0xf3 => {
                self.awaiting_argument = Some(value);
                self.reply(&[ACK]);
            }
            0xee => self.reply(&[ECHO]),
            0xf2 => self.reply(&[ACK, KEYBOARD_ID[0], KEYBOARD_ID[1]]),
            0xf4 => {
                self.scancodes.clear();
                self.scanning = true;
                self.reply(&[ACK]);
            }
            0xf5 => {
                self.scancodes.clear();
                self.set_defaults();
                self.scanning = false;
                self.reply(&[ACK]);
            }
            0xf6 => {
                self.scancodes.clear();
                self.set_defaults();
                self.reply(&[ACK]);
            }
            // Scancode set 3 key-type commands: acknowledged, no effect.
            0xf7..=0xfd => self.reply(&[ACK]),
            0xfe => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            0xff => {
                let last_sent = self.last_sent;
                *self = Self::new();
                self.last_sent = last_sent;
                self.reply(&[ACK, SELF_TEST_PASSED]);
            }
            _ => self.reply(&[RESEND]),
        }
    }
}

/// The PS/2 mouse's state (enough for drivers to detect and configure it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mouse {
    replies: VecDeque<u8>,
    packets: VecDeque<u8>,
    reporting: bool,
    remote_mode: bool,
    wrap_mode: bool,
    scaling_2_to_1: bool,
    resolution: u8,
    sample_rate: u8,
    /// A command waiting for its argument byte (0xe8, 0xf3).
    awaiting_argument: Option<u8>,
    last_sent: u8,
}

impl Mouse {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            packets: VecDeque::new(),
            reporting: false,
            remote_mode: false,
            wrap_mode: false,
            scaling_2_to_1: false,
            resolution: 2,
            sample_rate: 100,
            awaiting_argument: None,
            last_sent: 0,
        }
    }

    fn set_defaults(&mut self) {
        self.reporting = false;
        self.scaling_2_to_1 = false;
        self.resolution = 2;
        self.sample_rate = 100;
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.replies.extend(bytes);
    }

    fn pop(&mut self) -> Option<u8> {
        let byte = self
            .replies
            .pop_front()
            .or_else(|| self.packets.pop_front())?;
        self.last_sent = byte;
        Some(byte)
    }

    /// A byte from the host (PS/2 Technical Reference, "Pointing Device
    /// Commands").
    fn write(&mut self, value: u8) {
        if self.wrap_mode && value != 0xec && value != 0xff {
            self.reply(&[value]);
            return;
        }
        if let Some(command) = self.awaiting_argument.take() {
            match command {
                0xe8 => self.resolution = value & 3,
                _ => self.sample_rate = value,
            }
            self.reply(&[ACK]);
            return;
        }
        match value {
            0xe6 => {
                self.scaling_2_to_1 = false;
                self.reply(&[ACK]);
            }
            0xe7 => {
                self.scaling_2_to_1 = true;
                self.reply(&[ACK]);
            }
            0xe8 | 0xf3 => {
                self.awaiting_argument = Some(value);
                self.reply(&[ACK]);
            }
            0xe9 => {
                let status = u8::from(self.remote_mode) << 6
                    | u8::from(self.reporting) << 5
                    | u8::from(self.scaling_2_to_1) << 4;
                self.reply(&[ACK, status, self.resolution, self.sample_rate]);
            }
            0xea => {
                self.remote_mode = false;
                self.reply(&[ACK]);
            }
            0xeb => self.reply(&[ACK, 0x08, 0, 0]),
            0xec => {
                self.wrap_mode = false;
                self.reply(&[ACK]);
            }
            0xee => {
                self.wrap_mode = true;
                self.reply(&[ACK]);
            }
            0xf0 => {
                self.remote_mode = true;
                self.reply(&[ACK]);
            }
            0xf2 => self.reply(&[ACK, MOUSE_ID]),
            0xf4 => {
                self.reporting = true;
                self.reply(&[ACK]);
            }
            0xf5 => {
                self.reporting = false;
                self.reply(&[ACK]);
            }
            0xf6 => {
                self.set_defaults();
                self.reply(&[ACK]);
            }
            0xfe => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            0xff => {
                let last_sent = self.last_sent;
                *self = Self::new();
                self.last_sent = last_sent;
                self.reply(&[ACK, SELF_TEST_PASSED, MOUSE_ID]);
            }
            _ => self.reply(&[ACK]),
        }
    }
}

/// Saved state of an [`I8042`]: controller RAM, ports, buffers and both
/// devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    last_write_was_command: bool,
    /// A controller command waiting for its data byte on port 0x60.
    awaiting_data: Option<u8>,
    /// The output buffer (status bit 0 when present).
    output: Option<OutputByte>,
    last_output: u8,
    /// Controller replies, ahead of device bytes.
    controller_replies: VecDeque<OutputByte>,
    keyboard: Keyboard,
    mouse: Mouse,
    keyboard_irq_level: bool,
    aux_irq_level: bool,
}

impl I8042State {
    fn power_on() -> Self {
        let mut ram = [0u8; 32];
        ram[0] = POST_COMMAND_BYTE;
        Self {
            ram,
            output_port: OUTPORT_RESET_DEASSERTED | OUTPORT_A20,
            last_write_was_command: false,
            awaiting_data: None,
            output: None,
            last_output: 0,
            controller_replies: VecDeque::new(),
            keyboard: Keyboard::new(),
            mouse: Mouse::new(),
            keyboard_irq_level: false,
            aux_irq_level: false,
        }
    }
}

/// The keyboard controller with its keyboard and mouse.
pub struct I8042 {
    state: I8042State,
    system: Arc<dyn SystemControl>,
    keyboard_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
}

impl I8042 {
    /// A controller after POST (command byte 0x47: translation on, both
    /// interrupts and interfaces enabled; A20 enabled) that asks `system` for
    /// resets and raises `keyboard_irq` (IRQ1) and `aux_irq` (IRQ12).
    pub fn new(
        system: Arc<dyn SystemControl>,
        keyboard_irq: Arc<dyn IrqLine>,
        aux_irq: Arc<dyn IrqLine>,
    ) -> Self {
        Self {
            state: I8042State::power_on(),
            system,
            keyboard_irq,
            aux_irq,
        }
    }

    /// Returns controller and devices to the state of [`I8042::new`].
    pub fn reset(&mut self) {
        self.state = I8042State::power_on();
        self.keyboard_irq.set_level(false);
        self.aux_irq.set_level(false);
    }

    /// Queues host keystroke bytes (see the module docs for the set).
    /// Returns how many were accepted: none while the keyboard is not
    /// scanning (after 0xf5), at most the free buffer space otherwise.
    pub fn push_scancodes(&mut self, codes: &[u8]) -> usize {
        let keyboard = &mut self.state.keyboard;
        if !keyboard.scanning {
            return 0;
        }
        let space = INPUT_BUFFER_CAPACITY.saturating_sub(keyboard.scancodes.len());
        let accepted = codes.len().min(space);
        keyboard.scancodes.extend(&codes[..accepted]);
        self.refill_and_update();
        accepted
    }

    /// Queues host mouse packet bytes; accepted only while the mouse is
    /// reporting in stream mode (after 0xf4). Returns how many were taken.
    pub fn push_mouse_bytes(&mut self, bytes: &[u8]) -> usize {
        let mouse = &mut self.state.mouse;
        if !mouse.reporting || mouse.remote_mode {
            return 0;
        }
        let space = INPUT_BUFFER_CAPACITY.saturating_sub(mouse.packets.len());
        let accepted = bytes.len().min(space);
        mouse.packets.extend(&bytes[..accepted]);
        self.refill_and_update();
        accepted
    }

    /// Output port bit 1: the A20 gate is enabled.
    pub fn a20(&self) -> bool {
        self.state.output_port & OUTPORT_A20 != 0
    }

    /// The keyboard LEDs (bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock).
    pub fn leds(&self) -> u8 {
        self.state.keyboard.leds
    }

    /// The controller translates set 2 to set 1 (command byte bit 6).
    pub fn translation_enabled(&self) -> bool {
        self.command_byte() & CMD_TRANSLATE != 0
    }

    /// The keyboard's scancode set (1-3), as selected with 0xf0.
    pub fn scancode_set(&self) -> u8 {
        self.state.keyboard.scancode_set
    }

    /// The set the guest expects to read: 1 when the controller translates
    /// the keyboard's set 2 (the usual PC setup), else the keyboard's set.
    pub fn expected_scancode_set(&self) -> u8 {
        match self.scancode_set() {
            2 if self.translation_enabled() => 1,
            set => set,
        }
    }

    /// The controller command byte (RAM byte 0).
    pub fn command_byte(&self) -> u8 {
        self.state.ram[0]
    }

    /// Reads the status register (port 0x64).
    pub fn read_status(&self) -> u8 {
        let s = &self.state;
        let mut status = STATUS_NOT_INHIBITED;
        if let Some(output) = s.output {
            status |= STATUS_OUTPUT_FULL;
            if output.from_aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if s.ram[0] & CMD_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if s.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    /// Reads the output buffer (port 0x60); an empty buffer repeats the last
    /// byte.
    pub fn read_data(&mut self) -> u8 {
        let value = match self.state.output.take() {
            Some(output) => {
                self.state.last_output = output.value;
                output.value
            }
            None => self.state.last_output,
        };
        // Lower the line before the next byte goes out, so each byte is a
        // new edge.
        self.update_irqs();
        self.refill_and_update();
        value
    }

    /// Writes the data port (port 0x60): a controller command's argument or
    /// a byte for the keyboard.
    pub fn write_data(&mut self, value: u8) {
        self.state.last_write_was_command = false;
        match self.state.awaiting_data.take() {
            Some(command @ 0x60..=0x7f) => self.state.ram[usize::from(command & 0x1f)] = value,
            Some(0xd1) => self.write_output_port(value),
            Some(0xd2) => self.queue_controller_reply(value, false),
            Some(0xd3) => self.queue_controller_reply(value, true),
            Some(0xd4) => self.state.mouse.write(value),
            _ => {
                // Sending to the keyboard enables its interface.
                self.state.ram[0] &= !CMD_KEYBOARD_DISABLED;
                self.state.keyboard.write(value);
            }
        }
        self.refill_and_update();
    }

    /// Writes a controller command (port 0x64; PS/2 Technical Reference,
    /// "Commands (I/O Address Hex 64)").
    pub fn write_command(&mut self, command: u8) {
        self.state.last_write_was_command = true;
        self.state.awaiting_data = None;
        match command {
            0x20..=0x3f => {
                let value = self.state.ram[usize::from(command & 0x1f)];
                self.queue_controller_reply(value, false);
            }
            0x60..=0x7f | 0xd1..=0xd4 => self.state.awaiting_data = Some(command),
            // Test password installed: none.
            0xa4 => self.queue_controller_reply(0xf1, false),
            0xa7 => self.state.ram[0] |= CMD_AUX_DISABLED,
            0xa8 => self.state.ram[0] &= !CMD_AUX_DISABLED,
            // Interface tests: no error.
            0xa9 | 0xab => self.queue_controller_reply(0x00, false),
            0xaa => {
                self.state.ram[0] |= CMD_SYSTEM_FLAG;
                self.queue_controller_reply(0x55, false);
            }
            0xad => self.state.ram[0] |= CMD_KEYBOARD_DISABLED,
            0xae => self.state.ram[0] &= !CMD_KEYBOARD_DISABLED,
            // Input port: keyboard not inhibited, colour display.
            0xc0 => self.queue_controller_reply(0x80, false),
            0xd0 => {
                let value = self.output_port_value();
                self.queue_controller_reply(value, false);
            }
            // A20 gate shortcuts of many controllers.
            0xdd => self.state.output_port &= !OUTPORT_A20,
            0xdf => self.state.output_port |= OUTPORT_A20,
            // Test inputs: clock and data low.
            0xe0 => self.queue_controller_reply(0x00, false),
            // Pulse output port bits 0-3 that are 0; bit 0 is CPU reset.
            0xf0..=0xff => {
                if command & 1 == 0 {
                    self.system.request_reset();
                }
            }
            _ => log_odd_access!("i8042: unknown controller command {command:#x}"),
        }
        self.refill_and_update();
    }

    fn output_port_value(&self) -> u8 {
        let mut value = self.state.output_port & !(OUTPORT_KEYBOARD_FULL | OUTPORT_AUX_FULL);
        match self.state.output {
            Some(OutputByte {
                from_aux: false, ..
            }) => value |= OUTPORT_KEYBOARD_FULL,
            Some(OutputByte { from_aux: true, .. }) => value |= OUTPORT_AUX_FULL,
            None => {}
        }
        value
    }

    fn write_output_port(&mut self, value: u8) {
        self.state.output_port = value;
        if value & OUTPORT_RESET_DEASSERTED == 0 {
            self.system.request_reset();
        }
    }

    fn queue_controller_reply(&mut self, value: u8, from_aux: bool) {
        self.state
            .controller_replies
            .push_back(OutputByte { value, from_aux });
    }

    /// Moves the next byte into an empty output buffer: controller replies
    /// first, then the keyboard and the mouse if their interfaces are
    /// enabled.
    fn refill_and_update(&mut self) {
        let s = &mut self.state;
        if s.output.is_none() {
            s.output = s.controller_replies.pop_front().or_else(|| {
                let keyboard = (s.ram[0] & CMD_KEYBOARD_DISABLED == 0)
                    .then(|| s.keyboard.pop())
                    .flatten()
                    .map(|value| OutputByte {
                        value,
                        from_aux: false,
                    });
                keyboard.or_else(|| {
                    (s.ram[0] & CMD_AUX_DISABLED == 0)
                        .then(|| s.mouse.pop())
                        .flatten()
                        .map(|value| OutputByte {
                            value,
                            from_aux: true,
                        })
                })
            });
        }
        self.update_irqs();
    }

    /// IRQ1/IRQ12 follow "output buffer full" for their device, gated by
    /// the command byte's interrupt enables.
    fn update_irqs(&mut self) {
        let s = &mut self.state;
        let (keyboard, aux) = match s.output {
            Some(OutputByte {
                from_aux: false, ..
            }) => (s.ram[0] & CMD_KEYBOARD_IRQ != 0, false),
            Some(OutputByte { from_aux: true, .. }) => (false, s.ram[0] & CMD_AUX_IRQ != 0),
            None => (false, false),
        };
        if keyboard != s.keyboard_irq_level {
            s.keyboard_irq_level = keyboard;
            self.keyboard_irq.set_level(keyboard);
        }
        if aux != s.aux_irq_level {
            s.aux_irq_level = aux;
            self.aux_irq.set_level(aux);
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.read_status(),
            _ => {
                log_odd_access!("i8042: read at offset {offset:#x}");
                0xff
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        match offset {
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
            _ => log_odd_access!("i8042: write {value:#x} at offset {offset:#x}"),
        }
    }
}

impl BusDevice for I8042 {
    /// Offset 0 is the data port, offset 4 status/command; wider accesses
    /// use the low byte.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = self.read_register(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.write_register(offset, value);
        }
    }
}

impl Snapshot for I8042 {
    type State = I8042State;

    fn snapshot(&self) -> I8042State {
        self.state.clone()
    }

    /// Restores the state; the interrupt lines are not driven (the interrupt
    /// controller's snapshot holds their levels).
    fn restore(&mut self, state: I8042State) {
        self.state = state;
    }
}

fn lock(kbc: &Mutex<I8042>) -> MutexGuard<'_, I8042> {
    kbc.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One port of a shared [`I8042`] as a one-port [`BusDevice`], for buses
/// where 0x60-0x64 cannot be one range (port B sits at 0x61).
pub struct I8042Port {
    kbc: Arc<Mutex<I8042>>,
    register: u64,
}

impl I8042Port {
    /// The data port 0x60.
    pub fn data(kbc: Arc<Mutex<I8042>>) -> Self {
        Self {
            kbc,
            register: DATA_OFFSET,
        }
    }

    /// The status/command port 0x64.
    pub fn command(kbc: Arc<Mutex<I8042>>) -> Self {
        Self {
            kbc,
            register: COMMAND_OFFSET,
        }
    }
}

impl BusDevice for I8042Port {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            lock(&self.kbc).read(self.register, data);
        } else {
            data.fill(0xff);
            log_odd_access!("i8042: read at offset {offset:#x} of a one-port window");
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            lock(&self.kbc).write(self.register, data);
        } else {
            log_odd_access!("i8042: write at offset {offset:#x} of a one-port window");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spray, RecordingControl, RecordingIrq, XorShift};

    struct Fixture {
        kbc: I8042,
        system: Arc<RecordingControl>,
        kbd_irq: Arc<RecordingIrq>,
        aux_irq: Arc<RecordingIrq>,
    }

    fn fixture() -> Fixture {
        let system = RecordingControl::new();
        let kbd_irq = RecordingIrq::new();
        let aux_irq = RecordingIrq::new();
        let kbc = I8042::new(system.clone(), kbd_irq.clone(), aux_irq.clone());
        Fixture {
            kbc,
            system,
            kbd_irq,
            aux_irq,
        }
    }

    impl Fixture {
        fn cmd(&mut self, command: u8) {
            self.kbc.write(COMMAND_OFFSET, &[command]);
        }
        fn data(&mut self, value: u8) {
            self.kbc.write(DATA_OFFSET, &[value]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.kbc.read(COMMAND_OFFSET, &mut b);
            b[0]
        }
        /// Reads every byte in the output buffer.
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & STATUS_OUTPUT_FULL != 0 {
                let mut b = [0];
                self.kbc.read(DATA_OFFSET, &mut b);
                out.push(b[0]);
                assert!(out.len() < 1000);
            }
            out
        }
    }

    #[test]
    fn power_on_status_and_command_byte() {
        let mut f = fixture();
        assert_eq!(f.status(), STATUS_NOT_INHIBITED | STATUS_SYSTEM_FLAG);
        f.cmd(0x20);
        assert_eq!(
            f.status() & STATUS_LAST_WAS_COMMAND,
            STATUS_LAST_WAS_COMMAND
        );
        assert_eq!(f.drain(), [POST_COMMAND_BYTE]);
        assert!(f.kbc.a20());
        assert_eq!(f.kbc.expected_scancode_set(), 1);
    }

    #[test]
    fn controller_tests() {
        let mut f = fixture();
        f.cmd(0xaa);
        assert_eq!(f.drain(), [0x55]);
        f.cmd(0xab);
        assert_eq!(f.drain(), [0x00]);
        f.cmd(0xa9);
        assert_eq!(f.drain(), [0x00]);
        f.cmd(0xa4);
        assert_eq!(f.drain(), [0xf1]);
        f.cmd(0xc0);
        assert_eq!(f.drain(), [0x80]);
        f.cmd(0xe0);
        assert_eq!(f.drain(), [0x00]);
        f.cmd(0x01); // unknown: ignored
        assert_eq!(f.drain(), Vec::<u8>::new());
    }

    #[test]
    fn command_byte_and_ram_write_read() {
        let mut f = fixture();
        f.cmd(0x60);
        f.data(0x20);
        assert_eq!(f.status() & STATUS_LAST_WAS_COMMAND, 0);
        assert_eq!(f.kbc.command_byte(), 0x20);
        assert_eq!(f.status() & STATUS_SYSTEM_FLAG, 0);
        assert!(!f.kbc.translation_enabled());
        assert_eq!(f.kbc.expected_scancode_set(), 2);
        f.cmd(0x7f);
        f.data(0x99);
        f.cmd(0x3f);
        assert_eq!(f.drain(), [0x99]);
    }

    #[test]
    fn keyboard_reset_and_identify() {
        let mut f = fixture();
        f.data(0xff);
        assert!(f.kbd_irq.level());
        assert_eq!(f.drain(), [ACK, SELF_TEST_PASSED]);
        assert_eq!(f.kbd_irq.take_edges(), 2, "one edge per byte");
        assert!(!f.kbd_irq.level());
        f.data(0xf2);
        assert_eq!(f.drain(), [ACK, 0xab, 0x83]);
    }

    #[test]
    fn keyboard_commands_with_arguments() {
        let mut f = fixture();
        f.data(0xed);
        f.data(0x07);
        assert_eq!(f.drain(), [ACK, ACK]);
        assert_eq!(f.kbc.leds(), 7);
        f.data(0xf0);
        f.data(0x00);
        assert_eq!(f.drain(), [ACK, ACK, 2]);
        f.data(0xf0);
        f.data(0x01);
        assert_eq!(f.drain(), [ACK, ACK]);
        assert_eq!(f.kbc.scancode_set(), 1);
        f.data(0xf0);
        f.data(0x09);
        assert_eq!(f.drain(), [ACK, RESEND]);
        f.data(0xf3);
        f.data(0x20);
        assert_eq!(f.drain(), [ACK, ACK]);
        // A command byte instead of the LED argument is a new command.
        f.data(0xed);
        f.data(0xee);
        assert_eq!(f.drain(), [ACK, ECHO]);
        assert_eq!(f.kbc.leds(), 7);
    }

    #[test]
    fn keyboard_misc_commands() {
        let mut f = fixture();
        f.data(0xee);
        assert_eq!(f.drain(), [ECHO]);
        f.data(0x01);
        assert_eq!(f.drain(), [RESEND]);
        f.data(0xfe);
        assert_eq!(f.drain(), [RESEND], "resend repeats the last byte");
        f.data(0xf6);
        f.data(0xfa);
        assert_eq!(f.drain(), [ACK, ACK]);
    }

    #[test]
    fn scancodes_raise_irq1_one_byte_at_a_time() {
        let mut f = fixture();
        assert_eq!(f.kbc.push_scancodes(&[0x1e, 0x9e]), 2);
        assert!(f.kbd_irq.level());
        assert_eq!(f.status() & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA), 1);
        assert_eq!(f.drain(), [0x1e, 0x9e]);
        assert_eq!(f.kbd_irq.take_edges(), 2);
        // An empty buffer repeats the last byte.
        let mut b = [0];
        f.kbc.read(DATA_OFFSET, &mut b);
        assert_eq!(b[0], 0x9e);
    }

    #[test]
    fn replies_go_before_queued_keystrokes() {
        let mut f = fixture();
        f.cmd(0xad);
        f.kbc.push_scancodes(&[0x10, 0x90]);
        f.data(0xf2); // also re-enables the interface
        assert_eq!(f.drain(), [ACK, 0xab, 0x83, 0x10, 0x90]);
    }

    #[test]
    fn disabled_interface_holds_keystrokes() {
        let mut f = fixture();
        f.cmd(0xad);
        assert_eq!(
            f.kbc.command_byte() & CMD_KEYBOARD_DISABLED,
            CMD_KEYBOARD_DISABLED
        );
        f.kbc.push_scancodes(&[0x1c]);
        assert_eq!(f.status() & STATUS_OUTPUT_FULL, 0);
        f.cmd(0xae);
        assert_eq!(f.drain(), [0x1c]);
    }

    #[test]
    fn irq1_is_gated_by_the_command_byte() {
        let mut f = fixture();
        f.cmd(0x60);
        f.data(POST_COMMAND_BYTE & !CMD_KEYBOARD_IRQ);
        f.kbc.push_scancodes(&[0x1c]);
        assert!(!f.kbd_irq.level());
        assert_eq!(f.drain(), [0x1c]);
    }

    #[test]
    fn scanning_disable_drops_keystrokes() {
        let mut f = fixture();
        f.data(0xf5);
        assert_eq!(f.drain(), [ACK]);
        assert_eq!(f.kbc.push_scancodes(&[1, 2]), 0);
        f.data(0xf4);
        assert_eq!(f.drain(), [ACK]);
        assert_eq!(f.kbc.push_scancodes(&[1, 2]), 2);
        assert_eq!(f.drain(), [1, 2]);
    }

    #[test]
    fn keystroke_buffer_is_bounded() {
        let mut f = fixture();
        let many = vec![0x1e; INPUT_BUFFER_CAPACITY + 10];
        // One byte moves into the output buffer at once.
        assert_eq!(f.kbc.push_scancodes(&many), INPUT_BUFFER_CAPACITY);
        assert_eq!(f.kbc.push_scancodes(&many), 1);
    }

    #[test]
    fn output_port_and_a20() {
        let mut f = fixture();
        f.cmd(0xd1);
        f.data(0xdd);
        assert!(!f.kbc.a20());
        f.cmd(0xd0);
        assert_eq!(
            f.drain(),
            [0xcd],
            "buffer-full bits 4-5 are live, clear here"
        );
        f.cmd(0xd1);
        f.data(0xdf);
        assert!(f.kbc.a20());
        f.cmd(0xdd);
        assert!(!f.kbc.a20());
        f.cmd(0xdf);
        assert!(f.kbc.a20());
        assert_eq!(f.system.resets(), 0);
    }

    #[test]
    fn reset_requests() {
        let mut f = fixture();
        f.cmd(0xff);
        assert_eq!(f.system.resets(), 0, "0xff pulses nothing");
        f.cmd(0xfe);
        assert_eq!(f.system.resets(), 1);
        f.cmd(0xf0);
        assert_eq!(f.system.resets(), 2);
        f.cmd(0xfd);
        assert_eq!(f.system.resets(), 2, "bit 0 set: no reset");
        f.cmd(0xd1);
        f.data(0x02);
        assert_eq!(f.system.resets(), 3, "output port bit 0 low resets");
    }

    #[test]
    fn aux_commands_and_irq12() {
        let mut f = fixture();
        f.cmd(0xd4);
        f.data(0xff);
        assert!(f.aux_irq.level());
        assert!(!f.kbd_irq.level());
        assert_eq!(f.status() & STATUS_AUX_DATA, STATUS_AUX_DATA);
        assert_eq!(f.drain(), [ACK, SELF_TEST_PASSED, 0x00]);
        assert_eq!(f.aux_irq.take_edges(), 3);
        f.cmd(0xd4);
        f.data(0xf2);
        assert_eq!(f.drain(), [ACK, 0x00]);
        f.cmd(0xd4);
        f.data(0xf3);
        f.cmd(0xd4);
        f.data(200);
        f.cmd(0xd4);
        f.data(0xe8);
        f.cmd(0xd4);
        f.data(3);
        f.cmd(0xd4);
        f.data(0xe9);
        assert_eq!(f.drain(), [ACK, ACK, ACK, ACK, ACK, 0x00, 3, 200]);
        f.cmd(0xd4);
        f.data(0x42); // unknown: acknowledged
        assert_eq!(f.drain(), [ACK]);
    }

    #[test]
    fn mouse_wrap_mode_echoes() {
        let mut f = fixture();
        for byte in [0xee, 0x12, 0xec, 0x12] {
            f.cmd(0xd4);
            f.data(byte);
        }
        assert_eq!(f.drain(), [ACK, 0x12, ACK, ACK]);
    }

    #[test]
    fn mouse_packets_need_reporting_and_enabled_interface() {
        let mut f = fixture();
        assert_eq!(f.kbc.push_mouse_bytes(&[0x08, 1, 1]), 0);
        f.cmd(0xd4);
        f.data(0xf4);
        assert_eq!(f.drain(), [ACK]);
        f.cmd(0xa7);
        assert_eq!(f.kbc.push_mouse_bytes(&[0x08, 1, 1]), 3);
        assert_eq!(f.status() & STATUS_OUTPUT_FULL, 0);
        f.cmd(0xa8);
        assert_eq!(f.drain(), [0x08, 1, 1]);
    }

    #[test]
    fn irq12_is_gated_by_the_command_byte() {
        let mut f = fixture();
        f.cmd(0x60);
        f.data(CMD_KEYBOARD_IRQ);
        f.cmd(0xd4);
        f.data(0xf2);
        assert!(!f.aux_irq.level());
        assert_eq!(f.drain(), [ACK, 0x00]);
    }

    #[test]
    fn write_output_buffers() {
        let mut f = fixture();
        f.cmd(0xd2);
        f.data(0x33);
        assert_eq!(f.status() & STATUS_AUX_DATA, 0);
        assert!(f.kbd_irq.level());
        assert_eq!(f.drain(), [0x33]);
        f.cmd(0xd3);
        f.data(0x44);
        assert_eq!(f.status() & STATUS_AUX_DATA, STATUS_AUX_DATA);
        assert!(f.aux_irq.level());
        assert_eq!(f.drain(), [0x44]);
    }

    #[test]
    fn port_windows_share_the_controller() {
        let system = RecordingControl::new();
        let kbc = Arc::new(Mutex::new(I8042::new(
            system,
            RecordingIrq::new(),
            RecordingIrq::new(),
        )));
        let mut data = I8042Port::data(kbc.clone());
        let mut command = I8042Port::command(kbc.clone());
        command.write(0, &[0xaa, 0x00]);
        let mut b = [0u8; 2];
        command.read(0, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(b[1], 0xff);
        data.read(0, &mut b[..1]);
        assert_eq!(b[0], 0x55);
        data.read(1, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        spray(&mut data, 5, 20);
        spray(&mut command, 6, 20);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut f = fixture();
        f.data(0xed);
        f.data(0x02);
        f.kbc.push_scancodes(&[1, 2, 3]);
        f.cmd(0xd4);
        f.data(0xf4);
        let saved = f.kbc.snapshot();
        let mut g = fixture();
        g.kbc.restore(saved.clone());
        assert_eq!(g.kbc.snapshot(), saved);
        assert_eq!(g.kbc.leds(), 2);
        assert_eq!(g.drain(), f.drain());
    }

    #[test]
    fn reset_returns_to_power_on() {
        let mut f = fixture();
        f.kbc.push_scancodes(&[1]);
        f.cmd(0xdd);
        f.kbc.reset();
        assert!(!f.kbd_irq.level());
        assert!(f.kbc.a20());
        assert_eq!(f.drain(), Vec::<u8>::new());
    }

    #[test]
    fn spray_never_panics() {
        let mut f = fixture();
        let mut rng = XorShift::new(42);
        for seed in 0..10 {
            spray(&mut f.kbc, seed, 30);
            let bytes = rng.next_u64().to_le_bytes();
            f.kbc.push_scancodes(&bytes);
            f.kbc.push_mouse_bytes(&bytes);
        }
        for _ in 0..20_000 {
            let r = rng.next_u64();
            match r % 4 {
                0 => f.cmd((r >> 8) as u8),
                1 => f.data((r >> 8) as u8),
                2 => {
                    f.drain();
                }
                _ => {
                    f.kbc.push_scancodes(&[(r >> 8) as u8]);
                }
            }
        }
    }
}
